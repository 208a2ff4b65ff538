//! The [`Gate`] data calls pass through: Prism's `Drain` closes it (new
//! data calls are refused UNAVAILABLE while the ones in flight finish) and
//! Prism's `Stop` asks the server to shut down.
//!
//! A leaf shared by three layers: admission counts data calls in and out
//! and refuses them once draining, the health prober reports NOT_SERVING
//! while draining, and the lifecycle service closes the gate and waits for
//! the calls in flight. The server's own shutdown (SIGTERM) does not use the
//! gate; it walks [`crate::shutdown`]'s phases, which `Stop` triggers.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};

/// Open until drained; counts data calls in flight.
#[derive(Debug)]
pub struct Gate {
    /// Set once by `Drain`, never cleared: a drained plugin only stops.
    draining: AtomicBool,
    /// The same, for tasks that wait for it (the health prober).
    closed: watch::Sender<bool>,
    /// Data calls admitted and not finished. Incremented BEFORE the
    /// draining flag is read, both SeqCst, so a call either sees the flag
    /// or is counted by the drain that set it (never neither).
    in_flight: AtomicUsize,
    /// Woken when the last call in flight finishes while draining.
    idle: Notify,
    /// Why the gate was closed (the `Drain` request's reason), for health.
    reason: Mutex<String>,
    /// `Some(bound)` once a stop was requested: the drain bound it asked for
    /// (`None` inside = the configured `drain_timeout`).
    stop: watch::Sender<Option<Option<Duration>>>,
}

/// What a drain saw: calls that finished within its bound, calls still
/// running when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub finished: u64,
    pub unfinished: u64,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// An open gate with nothing in flight.
    pub fn new() -> Self {
        Self {
            draining: AtomicBool::new(false),
            closed: watch::Sender::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            reason: Mutex::new(String::new()),
            stop: watch::Sender::new(None),
        }
    }

    /// Counts a data call in; false (and not counted) when draining.
    pub fn enter(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.draining.load(Ordering::SeqCst) {
            self.leave();
            return false;
        }
        true
    }

    /// Counts a data call out (one that [`Gate::enter`] let in).
    pub fn leave(&self) {
        let before = self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if before == 1 && self.draining.load(Ordering::SeqCst) {
            self.idle.notify_waiters();
        }
    }

    /// True once `Drain` has closed the gate.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Data calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Why the gate is closed ("" while open or when no reason was given).
    pub fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Closes the gate; new data calls are refused from now on.
    pub fn close(&self, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            *r = reason.to_string();
        }
        self.draining.store(true, Ordering::SeqCst);
        self.closed.send_replace(true);
    }

    /// Resolves once the gate is closed (at once if it is). Cancel-safe.
    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        // The sender lives in `self`, which outlives this borrow.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Closes the gate and waits up to `bound` for the calls in flight.
    pub async fn drain(&self, reason: &str, bound: Duration) -> Drained {
        self.close(reason);
        let at_start = self.in_flight() as u64;
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a last `leave` between
            // the read and the wait still wakes us.
            idle.as_mut().enable();
            if self.in_flight() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                break;
            }
        }
        let unfinished = self.in_flight() as u64;
        Drained {
            finished: at_start.saturating_sub(unfinished),
            unfinished,
        }
    }

    /// Asks the server to shut down, its drain bounded by `bound` when
    /// given (else `drain_timeout`). A second request changes nothing.
    pub fn request_stop(&self, bound: Option<Duration>) {
        self.stop.send_if_modified(|stop| {
            let first = stop.is_none();
            if first {
                *stop = Some(bound);
            }
            first
        });
    }

    /// Resolves when a stop is requested, with the drain bound it asked for.
    pub async fn stop_requested(&self) -> Option<Duration> {
        let mut rx = self.stop.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(stop) => stop.flatten(),
            // The sender lives in `self`, which outlives this borrow.
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_closed_gate_refuses_and_does_not_count() {
        let gate = Gate::new();
        assert!(gate.enter());
        gate.close("test");
        assert!(!gate.enter());
        assert_eq!(gate.in_flight(), 1);
        assert_eq!(gate.reason(), "test");
    }

    #[tokio::test]
    async fn drain_waits_for_calls_in_flight() {
        let gate = Arc::new(Gate::new());
        assert!(gate.enter());
        let g = gate.clone();
        let drain = tokio::spawn(async move { g.drain("", Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        assert!(!drain.is_finished());
        gate.leave();
        let drained = drain.await.expect("drain task");
        assert_eq!(
            drained,
            Drained {
                finished: 1,
                unfinished: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drain_stops_waiting_at_its_bound() {
        let gate = Gate::new();
        assert!(gate.enter());
        let drained = gate.drain("", Duration::from_secs(1)).await;
        assert_eq!(
            drained,
            Drained {
                finished: 0,
                unfinished: 1
            }
        );
    }

    #[tokio::test]
    async fn the_first_stop_request_wins() {
        let gate = Gate::new();
        gate.request_stop(Some(Duration::from_secs(3)));
        gate.request_stop(None);
        assert_eq!(gate.stop_requested().await, Some(Duration::from_secs(3)));
    }
}
