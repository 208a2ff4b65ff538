//! The built-in health probe behind `redis-cache-plugin health`: one
//! `grpc.health.v1.Health/Check` call against a running plugin, turned into
//! an exit code the way `grpc_health_probe` does it.
//!
//! A distroless image has no shell, curl or grpcurl, so Docker's
//! `HEALTHCHECK` and Kubernetes exec probes run the binary itself. Only
//! SERVING passes; every other answer, a refused connection or a timeout
//! fails, each with its own exit code and a one-line reason.

use std::time::Duration;

use tokio::time::{Instant, timeout_at};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The longest `--timeout` accepted: a probe that waits longer than an hour
/// is a typo, and a deadline must stay representable as an `Instant`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Parses `--timeout`: a duration (`250ms`, `1s`) above zero, at most
/// [`MAX_TIMEOUT`].
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(s)?;
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(format!("{s:?} must be above 0 and at most 1h"));
    }
    Ok(d)
}

/// Where to probe, which service, and the deadline for the whole check.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `host:port` or `http://host:port`.
    pub addr: String,
    /// Health service name; empty asks for the server as a whole.
    pub service: String,
    /// Budget for connecting and the RPC together.
    pub timeout: Duration,
    /// Dial with TLS (and a client certificate for mTLS).
    pub tls: Option<ProbeTls>,
}

/// TLS settings of the probe: the CA that signed the plugin's certificate,
/// an optional client certificate and key (mTLS), and the name to verify.
#[derive(Debug, Clone, Default)]
pub struct ProbeTls {
    pub ca_file: String,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// Name in the plugin's certificate when it is not the address' host.
    pub server_name: Option<String>,
}

/// Why a probe did not report SERVING.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `--addr` is not something we can dial.
    #[error("invalid --addr {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    /// Nothing answered at the address within the deadline.
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The RPC failed (or ran out of time) before a status came back.
    #[error("health check of {addr} failed: {reason}")]
    Rpc { addr: String, reason: String },
    /// `timeout` is zero or too large to be a deadline.
    #[error("invalid --timeout {0:?}: must be above 0 and at most 1h")]
    Timeout(Duration),
    /// The server answered with something other than SERVING.
    #[error("service {service:?} is {status}")]
    Unhealthy { service: String, status: String },
}

impl ProbeError {
    /// The exit code `grpc_health_probe` uses for the same failure:
    /// 2 connection, 3 RPC, 4 not SERVING; 64 (EX_USAGE) for a bad address
    /// or timeout.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Address { .. } | Self::Timeout(_) => 64,
            Self::Connect { .. } => 2,
            Self::Rpc { .. } => 3,
            Self::Unhealthy { .. } => 4,
        }
    }
}

// === impl Probe ===

impl Probe {
    /// Connects, asks once, and succeeds only on SERVING.
    pub async fn check(&self) -> Result<(), ProbeError> {
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(ProbeError::Timeout(self.timeout));
        }
        let deadline = Instant::now() + self.timeout;
        let channel = self.connect(deadline).await?;
        let status = self.ask(channel, deadline).await?;
        if status == ServingStatus::Serving {
            return Ok(());
        }
        Err(ProbeError::Unhealthy {
            service: self.service.clone(),
            status: status.as_str_name().to_string(),
        })
    }

    async fn connect(&self, deadline: Instant) -> Result<Channel, ProbeError> {
        let endpoint = self.endpoint()?;
        let err = |reason: String| ProbeError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        match timeout_at(deadline, endpoint.connect()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(err(error_chain(&e))),
            Err(_) => Err(err(format!("timed out after {:?}", self.timeout))),
        }
    }

    async fn ask(&self, channel: Channel, deadline: Instant) -> Result<ServingStatus, ProbeError> {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: self.service.clone(),
        });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let err = |reason: String| ProbeError::Rpc {
            addr: self.addr.clone(),
            reason,
        };
        let response = match timeout_at(deadline, HealthClient::new(channel).check(request)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                return Err(err(format!("{:?}: {}", status.code(), status.message())));
            }
            Err(_) => return Err(err(format!("timed out after {:?}", self.timeout))),
        };
        Ok(ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown))
    }

    fn endpoint(&self) -> Result<Endpoint, ProbeError> {
        let uri = dial_uri(&self.addr).map_err(|reason| ProbeError::Address {
            addr: self.addr.clone(),
            reason,
        })?;
        let bad = |reason: String| ProbeError::Address {
            addr: self.addr.clone(),
            reason,
        };
        let uri = match &self.tls {
            Some(_) => uri.replacen("http://", "https://", 1),
            None => uri,
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|e| bad(e.to_string()))?;
        let endpoint = match &self.tls {
            Some(tls) => endpoint
                .tls_config(tls.client_config().map_err(bad)?)
                .map_err(|e| bad(e.to_string()))?,
            None => endpoint,
        };
        Ok(endpoint.connect_timeout(self.timeout))
    }
}

impl ProbeTls {
    fn client_config(&self) -> Result<ClientTlsConfig, String> {
        crate::tls::install_crypto_provider();
        let read =
            |flag: &str, path: &str| std::fs::read(path).map_err(|e| format!("{flag} {path}: {e}"));
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("--ca", &self.ca_file)?));
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let identity = Identity::from_pem(read("--cert", cert)?, read("--key", key)?);
                config = config.identity(identity);
            }
            (None, None) => {}
            _ => return Err("--cert and --key go together".into()),
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

/// `host:port` → `http://host:port`; a plain-text `http://` URI passes
/// through. TLS is chosen with `--tls`, not by the scheme.
fn dial_uri(addr: &str) -> Result<String, String> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Err("must not be empty".into());
    }
    if addr.starts_with("https://") {
        return Err("give host:port and --tls for TLS".into());
    }
    let uri = if addr.starts_with("http://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let parsed: http::Uri = uri.parse().map_err(|e| format!("{e}"))?;
    if parsed.port_u16().is_none() {
        return Err("needs a port, like 127.0.0.1:9092".into());
    }
    Ok(uri)
}

/// The error and its sources on one line ("transport error: connection
/// refused"), skipping a source that repeats its parent's text.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        match parts.last_mut() {
            Some(last) if text.starts_with(last.as_str()) => *last = text,
            Some(last) if last.contains(&text) => {}
            _ => parts.push(text),
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_port_is_dialed_over_http() {
        assert_eq!(
            dial_uri("127.0.0.1:9092").as_deref(),
            Ok("http://127.0.0.1:9092")
        );
        assert_eq!(dial_uri("[::1]:9092").as_deref(), Ok("http://[::1]:9092"));
        assert_eq!(
            dial_uri("http://localhost:1").as_deref(),
            Ok("http://localhost:1")
        );
    }

    #[test]
    fn unusable_addresses_are_rejected() {
        for addr in ["", "127.0.0.1", "https://127.0.0.1:9092", "a b:1"] {
            assert!(dial_uri(addr).is_err(), "{addr:?} accepted");
        }
    }

    #[test]
    fn exit_codes_follow_grpc_health_probe() {
        let connect = ProbeError::Connect {
            addr: "a".into(),
            reason: "r".into(),
        };
        let unhealthy = ProbeError::Unhealthy {
            service: String::new(),
            status: "NOT_SERVING".into(),
        };
        assert_eq!(connect.exit_code(), 2);
        assert_eq!(unhealthy.exit_code(), 4);
    }

    #[tokio::test]
    async fn nothing_listening_fails_to_connect() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let probe = Probe {
            addr: format!("127.0.0.1:{port}"),
            service: String::new(),
            timeout: Duration::from_secs(1),
            tls: None,
        };
        let err = probe.check().await.expect_err("nothing listens");
        assert_eq!(err.exit_code(), 2, "{err}");
    }
}
