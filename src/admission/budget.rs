//! What an admitted call holds, and under which limit: [`Budget`] (units
//! in use under a limit, for calls and bytes), [`ConnState`] (one
//! connection's byte share and its calls in flight, which the transport's
//! idle watchdog reads) and [`Ticket`] (what one call holds until its
//! response is done). It decides nothing; `admission` does.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper::body::Incoming;
use tokio::time::Instant;

use super::Admission;

/// Units in use under a limit, never waited on: an atomic, because the
/// hot path takes and gives back several per call (a semaphore would lock
/// its waiter list on every release).
pub(super) struct Budget {
    pub(super) used: AtomicUsize,
    pub(super) limit: usize,
}

impl Budget {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    pub(super) fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    pub(super) fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What one connection holds: its byte share and its requests in flight.
pub struct ConnState {
    pub(super) bytes: Budget,
    pub(super) in_flight: AtomicUsize,
    /// When the last request ended, in ms after `opened`.
    pub(super) idle_since_ms: AtomicU64,
    pub(super) opened: Instant,
}

impl ConnState {
    /// A new connection's state, with a byte share of `share`.
    pub(super) fn new(share: usize) -> Self {
        Self {
            bytes: Budget::new(share),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }

    pub(super) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn end(&self) {
        // The time first, so a watchdog that sees zero in flight sees it too.
        let ms = self.opened.elapsed().as_millis() as u64;
        self.idle_since_ms.store(ms, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the connection will have been idle for `idle`, if nothing starts.
    pub fn idle_deadline(&self, idle: Duration) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + idle;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        self.opened + since + idle
    }

    /// No request in flight, and none for `idle`.
    pub fn is_idle(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.idle_deadline(idle) <= Instant::now()
    }
}

/// Held from a request's headers until its response body is done: the
/// connection's in-flight count and, for a cache call, its slot and the
/// response bytes.
pub(super) struct Ticket {
    pub(super) conn: Arc<ConnState>,
    /// Set when the ticket holds a cache call's slot.
    pub(super) admission: Option<Arc<Admission>>,
    pub(super) bytes: usize,
    /// The body of a refused request still arriving after
    /// [`REFUSED_BODY_GRACE`]. Dropped only after the answer has been handed
    /// to HTTP/2, so the stream is reset with NO_ERROR ("stop sending, the
    /// answer is complete") rather than CANCEL.
    pub(super) unread: Option<Incoming>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(a) = &self.admission {
            a.requests.give(1);
            a.gate.leave();
            a.release(&self.conn, self.bytes);
        }
        self.conn.end();
    }
}
