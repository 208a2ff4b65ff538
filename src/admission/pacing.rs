//! Pacing of refusals under a flood of them.
//!
//! A call over `max_concurrent_requests` is refused before its body is read,
//! but the refusal is still an HTTP/2 stream opened, answered and torn down:
//! a few microseconds of the plugin's CPU, and as much again in the caller.
//! Callers that retry a refusal at once turn that into a loop bounded only
//! by CPU (about 100,000 refusals a second on 2 cores), and the admitted
//! calls wait for the cores the loop takes. So refusals go out at once while
//! they are few — up to `max_concurrent_requests` of them in one window of
//! `refusal_delay` — and past that each further refusal in the window is
//! answered `refusal_delay` after its headers arrived. A refused caller
//! then retries at most once per `refusal_delay`, which bounds the flood
//! whatever it does, while a short burst is still refused at once.
//!
//! A held refusal holds no permit and no bytes: only its stream and a
//! timer. This module decides *whether* to hold; `Admitted` holds.

use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use tokio::time::Instant;

/// Counts refusals per window and says which ones to hold.
pub(super) struct Pacer {
    delay: Duration,
    /// Refusals answered at once in one window.
    burst: usize,
    origin: Instant,
    /// The window the count belongs to (windows since `origin`).
    window: AtomicU64,
    count: AtomicUsize,
}

impl Pacer {
    /// A pacer holding refusals past `burst` per window of `delay`; a zero
    /// `delay` holds none.
    pub(super) fn new(delay: Duration, burst: usize) -> Self {
        Self {
            delay,
            burst,
            origin: Instant::now(),
            window: AtomicU64::new(0),
            count: AtomicUsize::new(0),
        }
    }

    /// How long to hold a refusal made now; `None` to answer at once.
    pub(super) fn hold(&self) -> Option<Duration> {
        if self.delay.is_zero() {
            return None;
        }
        self.hold_at(Instant::now())
    }

    fn hold_at(&self, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        // Fits: a u64 of windows of at least 1 ns lasts 584 years.
        let window = (elapsed / self.delay.as_nanos()) as u64;
        let seen = self.window.load(Ordering::Relaxed);
        // One caller moves the window on and restarts the count; a refusal
        // counted into the old window meanwhile is only a rounding error of
        // the pace, never a held call too many or too few by more than that.
        if window > seen
            && self
                .window
                .compare_exchange(seen, window, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        (n > self.burst).then_some(self.delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn refusals_past_the_burst_in_one_window_are_held() {
        let p = Pacer::new(10 * MS, 3);
        let t = p.origin + MS;
        let held: Vec<_> = (0..5).map(|_| p.hold_at(t)).collect();
        assert_eq!(held, [None, None, None, Some(10 * MS), Some(10 * MS)]);
    }

    #[test]
    fn a_new_window_answers_at_once_again() {
        let p = Pacer::new(10 * MS, 2);
        for _ in 0..4 {
            p.hold_at(p.origin + MS);
        }
        assert_eq!(p.hold_at(p.origin + 9 * MS), Some(10 * MS));
        let next = p.origin + 12 * MS;
        assert_eq!(p.hold_at(next), None);
        assert_eq!(p.hold_at(next), None);
        assert_eq!(p.hold_at(next), Some(10 * MS));
    }

    #[test]
    fn a_zero_delay_holds_nothing() {
        let p = Pacer::new(Duration::ZERO, 0);
        assert!((0..100).all(|_| p.hold().is_none()));
    }
}
