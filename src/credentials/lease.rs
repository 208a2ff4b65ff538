//! Lease timing: when to renew a lease, when to give up on it and rotate.
//!
//! Pure functions of a lease's duration, its renewability and the clock, so
//! every rule is unit-tested without Vault or sleeping. The loop that acts on
//! them lives in [`super::rotation`]; this module performs no I/O.

use std::time::Duration;

use tokio::time::Instant;

/// Vault rounds TTLs to whole seconds; a grant within this (or a tenth of
/// the request, for short leases) of the request counts as a full extension.
const GRANT_SLACK: Duration = Duration::from_secs(1);

/// Never plan an action sooner than this after the last one, so a lease of
/// a second or less cannot spin the loop.
const MIN_STEP: Duration = Duration::from_millis(100);

/// The longest lease or token lifetime the plugin plans with. Vault may
/// answer with any `u64` of seconds (a misconfigured role, a root token's
/// `creation_ttl`); `now + ttl` past the clock's range panics, which would
/// end the credential task silently. A year is far beyond any renewal plan.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A TTL of `secs` seconds as Vault states it, clamped to [`MAX_TTL`].
pub fn ttl_from_secs(secs: u64) -> Duration {
    Duration::from_secs(secs).min(MAX_TTL)
}

/// When something granted for `ttl` at `now` ends (`ttl` clamped to
/// [`MAX_TTL`], so this never overflows).
pub fn expiry(now: Instant, ttl: Duration) -> Instant {
    now + ttl.min(MAX_TTL)
}

/// A lease as Vault describes it after a read or a renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub ttl: Duration,
    pub renewable: bool,
}

/// What the lease loop does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask Vault to extend the current lease.
    Renew,
    /// Fetch new credentials, switch to them, revoke the old lease.
    Rotate,
    /// Nothing is scheduled (credentials without a lease, e.g. KV v2); only
    /// a rejection by Redis triggers a new read.
    Hold,
}

/// The next action and when to take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub step: Step,
    pub at: Instant,
}

/// How a renewal answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The lease got the full increment; keep it.
    Extended,
    /// Vault capped it (max TTL) or it can no longer be renewed: rotate.
    Exhausted,
}

/// Plans the next step for a lease granted at `now`: renew (or, when it is
/// not renewable, rotate) after `fraction` of its TTL. No TTL means no lease.
pub fn plan(now: Instant, grant: Option<&Grant>, fraction: f64) -> Plan {
    let Some(g) = grant.filter(|g| !g.ttl.is_zero()) else {
        return Plan {
            step: Step::Hold,
            at: now,
        };
    };
    let step = if g.renewable {
        Step::Renew
    } else {
        Step::Rotate
    };
    Plan {
        step,
        at: expiry(now, g.ttl.min(MAX_TTL).mul_f64(fraction).max(MIN_STEP)),
    }
}

/// Classifies a renewal that asked for `requested` and got `granted`.
pub fn renewal(requested: Duration, granted: &Grant) -> Renewal {
    let slack = GRANT_SLACK.min(requested / 10);
    if granted.renewable && !granted.ttl.is_zero() && granted.ttl + slack >= requested {
        Renewal::Extended
    } else {
        Renewal::Exhausted
    }
}

/// The point after which failed renewals give way to a rotation: half of
/// the time left after the planned renewal stays for fetching new
/// credentials and switching connections before `expires`.
pub fn renew_deadline(expires: Instant, ttl: Duration, fraction: f64) -> Instant {
    let reserve = ttl.mul_f64((1.0 - fraction) / 2.0).max(MIN_STEP);
    expires.checked_sub(reserve).unwrap_or(expires)
}

/// Seconds from `now` until `expires` (0 when past), for the expiry gauge.
pub fn seconds_left(now: Instant, expires: Option<Instant>) -> f64 {
    expires.map_or(0.0, |e| e.saturating_duration_since(now).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(secs: u64, renewable: bool) -> Grant {
        Grant {
            ttl: Duration::from_secs(secs),
            renewable,
        }
    }

    #[test]
    fn renewable_lease_renews_at_the_fraction() {
        let now = Instant::now();
        let p = plan(now, Some(&grant(30, true)), 0.67);
        assert_eq!(p.step, Step::Renew);
        assert_eq!(p.at - now, Duration::from_millis(20_100));
    }

    #[test]
    fn non_renewable_lease_rotates_at_the_fraction() {
        let now = Instant::now();
        let p = plan(now, Some(&grant(9, false)), 2.0 / 3.0);
        assert_eq!(p.step, Step::Rotate);
        assert_eq!(p.at - now, Duration::from_secs(6));
    }

    #[test]
    fn no_lease_holds() {
        let now = Instant::now();
        assert_eq!(plan(now, None, 0.67).step, Step::Hold);
        assert_eq!(plan(now, Some(&grant(0, false)), 0.67).step, Step::Hold);
    }

    #[test]
    fn tiny_leases_do_not_spin() {
        let now = Instant::now();
        let g = Grant {
            ttl: Duration::from_millis(10),
            renewable: true,
        };
        assert!(plan(now, Some(&g), 0.5).at - now >= MIN_STEP);
    }

    #[test]
    fn full_grant_extends() {
        let asked = Duration::from_secs(30);
        assert_eq!(renewal(asked, &grant(30, true)), Renewal::Extended);
        // Rounding down by Vault is not a cap.
        assert_eq!(renewal(asked, &grant(29, true)), Renewal::Extended);
        // For short leases a lost second is.
        assert_eq!(
            renewal(Duration::from_secs(3), &grant(2, true)),
            Renewal::Exhausted
        );
    }

    #[test]
    fn capped_or_final_grant_is_exhausted() {
        let asked = Duration::from_secs(30);
        assert_eq!(renewal(asked, &grant(12, true)), Renewal::Exhausted);
        assert_eq!(renewal(asked, &grant(30, false)), Renewal::Exhausted);
        assert_eq!(renewal(asked, &grant(0, true)), Renewal::Exhausted);
    }

    #[test]
    fn deadline_leaves_half_the_tail_for_rotation() {
        let now = Instant::now();
        let ttl = Duration::from_secs(30);
        let expires = now + ttl;
        let d = renew_deadline(expires, ttl, 0.6);
        // tail after renewal = 12 s; half of it is kept back.
        assert_eq!(expires - d, Duration::from_secs(6));
        assert!(d > plan(now, Some(&grant(30, true)), 0.6).at);
    }

    #[test]
    fn huge_ttls_are_clamped_instead_of_overflowing_the_clock() {
        let now = Instant::now();
        assert_eq!(ttl_from_secs(u64::MAX), MAX_TTL);
        assert_eq!(ttl_from_secs(30), Duration::from_secs(30));
        assert_eq!(expiry(now, Duration::MAX) - now, MAX_TTL);
        let huge = Grant {
            ttl: Duration::MAX,
            renewable: true,
        };
        let p = plan(now, Some(&huge), 0.67);
        assert_eq!(p.at - now, MAX_TTL.mul_f64(0.67));
    }

    #[test]
    fn gauge_counts_down_to_zero() {
        let now = Instant::now();
        assert_eq!(seconds_left(now, Some(now + Duration::from_secs(5))), 5.0);
        assert_eq!(seconds_left(now + Duration::from_secs(9), Some(now)), 0.0);
        assert_eq!(seconds_left(now, None), 0.0);
    }
}
