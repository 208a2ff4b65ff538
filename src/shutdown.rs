//! The one shutdown signal: a [`Phase`] that only moves forward, advanced
//! by the server (`server.rs`) and watched by every long-lived task.
//!
//! Stopping a sidecar on the hot path is an ordered walk, not a single bit:
//! first health says NOT_SERVING (so the gateway stops sending), then the
//! listener stops accepting and calls in flight finish, and only then do the
//! background tasks (pool upkeep, TLS reload, credential rotation) end and
//! the credentials get revoked. Each task waits for the phase that concerns
//! it ([`Watch::reached`]); the server advances the phase once the previous
//! step is done (it awaits the tasks, it never sleeps to let them settle).
//!
//! This module owns the phases and their order. It does not know the tasks:
//! what a task does when its phase comes is that task's business.

use tokio::sync::watch;

/// Where the process is in stopping, in the order it passes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Normal operation.
    Serving,
    /// Shutdown was requested: health reports NOT_SERVING.
    Closing,
    /// The listener is closed; calls in flight finish (bounded by
    /// `drain_timeout`).
    Draining,
    /// No call is left: background tasks end and release what they hold.
    Stopped,
}

/// The owner's side: advances the phase. Held by whoever orders shutdown.
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<Phase>,
}

/// A task's side: cheap to clone, one per task.
#[derive(Clone, Debug)]
pub struct Watch {
    rx: watch::Receiver<Phase>,
}

impl Shutdown {
    /// A signal in [`Phase::Serving`].
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(Phase::Serving),
        }
    }

    /// A view for one more task.
    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
        }
    }

    /// Moves to `phase`; never backwards (a later phase already reached
    /// stays), so a repeated or late call cannot reopen anything.
    pub fn advance(&self, phase: Phase) {
        self.tx.send_if_modified(|now| {
            let forward = phase > *now;
            if forward {
                *now = phase;
            }
            forward
        });
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Shutdown {
    /// An owner that goes away (an error return, a panic unwinding) stops
    /// everything it started rather than leaving tasks waiting forever.
    fn drop(&mut self) {
        self.advance(Phase::Stopped);
    }
}

impl Watch {
    /// Resolves once the phase is `phase` or later. Cancel-safe: use it as
    /// a branch of `select!`.
    pub async fn reached(&mut self, phase: Phase) {
        // Err means the owner is gone, and its Drop advanced to Stopped
        // first: every phase counts as reached.
        let _ = self.rx.wait_for(|now| *now >= phase).await;
    }

    /// True once the phase is `phase` or later.
    pub fn is_reached(&self, phase: Phase) -> bool {
        *self.rx.borrow() >= phase
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn tasks_wake_at_their_phase_and_not_before() {
        let shutdown = Shutdown::new();
        let mut closing = shutdown.watch();
        let mut stopped = shutdown.watch();
        let stop_task = tokio::spawn(async move { stopped.reached(Phase::Stopped).await });

        shutdown.advance(Phase::Closing);
        closing.reached(Phase::Closing).await;
        tokio::task::yield_now().await;
        assert!(!stop_task.is_finished(), "Stopped must wait for its phase");

        shutdown.advance(Phase::Stopped);
        tokio::time::timeout(Duration::from_secs(1), stop_task)
            .await
            .expect("woken at Stopped")
            .expect("task");
    }

    #[test]
    fn phases_never_go_back() {
        let shutdown = Shutdown::new();
        shutdown.advance(Phase::Draining);
        shutdown.advance(Phase::Closing);
        assert_eq!(shutdown.phase(), Phase::Draining);
        assert!(shutdown.watch().is_reached(Phase::Closing));
        assert!(!shutdown.watch().is_reached(Phase::Stopped));
    }

    #[tokio::test]
    async fn a_dropped_owner_stops_every_task() {
        let shutdown = Shutdown::new();
        let mut watch = shutdown.watch();
        drop(shutdown);
        tokio::time::timeout(Duration::from_secs(1), watch.reached(Phase::Stopped))
            .await
            .expect("a watch outliving its owner sees Stopped");
    }
}
