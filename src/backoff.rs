//! [`Backoff`]: how long to wait before trying again. A leaf shared by the
//! Redis pool (reconnects) and the credentials loop (Vault retries); it
//! knows nothing of either.

use std::time::Duration;

/// Exponential backoff with "equal jitter": each delay is drawn uniformly
/// between half the ceiling and the ceiling (see [`Backoff::next_delay`]).
/// Not full jitter (0 to the ceiling): a retry never comes sooner than half
/// the ceiling, so a dead server is not hammered, while the random half
/// still keeps many clients from retrying in step.
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The ceiling grows `base * 2^attempt` up to `max`; the delay is drawn
    /// uniformly from `[ceiling / 2, ceiling]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter: f64 = rand::random_range(0.5..=1.0);
        ceiling.mul_f64(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(10));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(80)));
        assert!(delays[5] >= Duration::from_millis(40));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }
}
