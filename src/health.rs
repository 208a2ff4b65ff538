//! Health: a prober task that PINGs the backend with the current credentials
//! and moves the `grpc.health.v1` statuses of `""`, `cache.v1.Cache` and the
//! plugin's name together.
//!
//! One more name, `liveness`, is SERVING from start-up until shutdown
//! whatever Redis does: a liveness probe pointed at it restarts a stuck
//! process, not a healthy sidecar whose Redis is down.
//!
//! The service wakes the prober at once on a connection failure, so health
//! follows reality faster than `health_interval`. While Prism's `Drain` has
//! closed the [`Gate`] the status is NOT_SERVING whatever Redis does. What
//! was published last (and why) is also kept in a [`HealthView`], which
//! Prism's `HealthCheck` and `Drain` read. This module does not serve gRPC;
//! tonic-health does, from the reporter it drives.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

use crate::{
    backend::Backend,
    credentials::CredentialsHandle,
    drain::Gate,
    metrics::Metrics,
    shutdown::{Phase, Watch},
};

/// The gRPC name of the cache service, as health clients ask for it.
pub const CACHE_SERVICE: &str = "cache.v1.Cache";
/// SERVING while the process runs and is not shutting down.
pub const LIVENESS_SERVICE: &str = "liveness";

/// Drives the health statuses.
pub struct Prober {
    reporter: HealthReporter,
    names: Vec<String>,
    metrics: Arc<Metrics>,
    /// Wakes the prober before its next tick (a request saw Redis fail).
    pub wake: Arc<Notify>,
    /// Last status set, so transitions are logged once.
    serving: AtomicBool,
    /// When set, expired credentials (a lease Vault could not replace) mean
    /// NOT_SERVING even if Redis still answers.
    creds: Option<CredentialsHandle>,
    /// Closed by Prism's `Drain`: NOT_SERVING from then on.
    gate: Arc<Gate>,
    /// The last status published, for readers other than gRPC health.
    view: watch::Sender<HealthView>,
}

/// The status last published and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthView {
    pub serving: bool,
    /// Why not serving ("" when serving).
    pub reason: String,
    /// The status was decided with the drain gate already closed, so no
    /// SERVING can follow it (Prism's `Drain` waits for this).
    pub draining: bool,
}

impl Prober {
    /// A prober for the plugin named `plugin`; every status starts NOT_SERVING.
    pub fn new(reporter: HealthReporter, plugin: &str, metrics: Arc<Metrics>) -> Self {
        let names = vec![String::new(), CACHE_SERVICE.to_string(), plugin.to_string()];
        Self {
            reporter,
            names,
            metrics,
            wake: Arc::new(Notify::new()),
            serving: AtomicBool::new(false),
            creds: None,
            gate: Arc::new(Gate::new()),
            view: watch::Sender::new(HealthView {
                reason: "starting".into(),
                ..HealthView::default()
            }),
        }
    }

    /// Reports NOT_SERVING while `gate` is closed (Prism's `Drain`).
    pub fn with_gate(mut self, gate: Arc<Gate>) -> Self {
        self.gate = gate;
        self
    }

    /// The published status, as it changes.
    pub fn view(&self) -> watch::Receiver<HealthView> {
        self.view.subscribe()
    }

    /// Also requires the credentials in `creds` to be valid.
    pub fn with_credentials(mut self, creds: CredentialsHandle) -> Self {
        self.creds = Some(creds);
        self
    }

    fn credentials_valid(&self) -> bool {
        let now = std::time::Instant::now();
        self.creds
            .as_ref()
            .is_none_or(|c| c.current().is_valid(now))
    }

    /// Sets every status at once and mirrors it in the metric.
    pub async fn set(&self, serving: bool) {
        self.set_because(serving, None).await;
    }

    /// [`Health::set`], logging `details` (why the probe failed: no master,
    /// slots without a primary, ...) when the status turns NOT_SERVING.
    async fn set_because(&self, serving: bool, details: Option<&str>) {
        // Read just before publishing: a status decided before the gate
        // closed must not be published after it (see `HealthView::draining`).
        let draining = self.gate.is_draining();
        let serving = serving && !draining;
        let drain_reason;
        let details = if draining {
            drain_reason = format!("draining: {}", self.gate.reason());
            Some(drain_reason.as_str())
        } else {
            details
        };
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in &self.names {
            self.reporter.set_service_status(name, status).await;
        }
        self.metrics.health_status.set(i64::from(serving));
        let reason = match serving {
            true => String::new(),
            false => details.unwrap_or("backend not probed yet").to_string(),
        };
        self.view.send_replace(HealthView {
            serving,
            reason,
            draining,
        });
        if self.serving.swap(serving, Ordering::Relaxed) != serving {
            if serving {
                info!("health: SERVING");
            } else {
                warn!(
                    details = details.unwrap_or("shutting down"),
                    "health: NOT_SERVING"
                );
            }
        }
    }

    /// Probes every `interval` (and when woken) until shutdown reaches
    /// [`Phase::Closing`], then reports NOT_SERVING for good and returns:
    /// the server awaits this task before it closes the listener, so no
    /// client sees the port close while health still says SERVING.
    pub async fn run<B: Backend>(
        self,
        backend: Arc<B>,
        interval: Duration,
        timeout: Duration,
        mut shutdown: Watch,
    ) {
        self.set(false).await;
        self.set_liveness(ServingStatus::Serving).await;
        loop {
            // A probe in flight (Redis slow or gone) must not hold up shutdown.
            // Nor may it hold up a drain's NOT_SERVING (a PING queued behind
            // a slow call can take the whole probe timeout).
            let probed = tokio::select! {
                biased;
                () = shutdown.reached(Phase::Closing) => break,
                () = self.gate.closed() => Err("draining".to_string()),
                probed = self.probe(&*backend, timeout) => probed,
            };
            let ok = probed.is_ok();
            self.set_because(ok, probed.err().as_deref()).await;
            // When failing, look again soon so recovery shows quickly.
            let wait = if ok {
                interval
            } else {
                interval.min(Duration::from_millis(100))
            };
            tokio::select! {
                () = shutdown.reached(Phase::Closing) => break,
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
            }
        }
        self.set_because(false, Some("shutting down")).await;
        self.set_liveness(ServingStatus::NotServing).await;
    }

    /// Ok when the credentials are valid and the backend answers a PING
    /// within `timeout`; else why not.
    async fn probe<B: Backend>(&self, backend: &B, timeout: Duration) -> Result<(), String> {
        if self.gate.is_draining() {
            return Err(format!("draining: {}", self.gate.reason()));
        }
        if !self.credentials_valid() {
            return Err("the Redis credentials are expired or not issued yet".into());
        }
        match tokio::time::timeout(timeout, backend.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("redis did not answer PING within {timeout:?}")),
        }
    }

    async fn set_liveness(&self, status: ServingStatus) {
        self.reporter
            .set_service_status(LIVENESS_SERVICE, status)
            .await;
    }
}
