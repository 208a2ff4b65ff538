//! Request checks that need no service state: keys, values, TTLs, the Set
//! condition, repeated keys. Each error names the field and the limit it
//! broke, never a value.

use std::time::Duration;

use crate::{
    backend::SetCondition,
    config::MAX_TTL,
    error::{Error, Result},
    pb,
};

/// True when a key occurs twice. Small batches compare pairwise (no
/// allocation); larger ones sort borrowed keys (one allocation, no hashing:
/// a hash set was 8 % of the plugin's CPU on MGet 100, see BENCHMARKS.md).
/// Any order puts equal keys side by side; length, then bytes from the end,
/// is the cheap one, as keys tend to share a prefix and differ at the end
/// (1.7 us per 100 keys against 2.3-3.5 us for a hash set or a plain sort).
pub(super) fn has_repeats<K: AsRef<[u8]>>(keys: &[K]) -> bool {
    if keys.len() <= 8 {
        let same = |a: &K, b: &K| a.as_ref() == b.as_ref();
        return (0..keys.len()).any(|i| keys[..i].iter().any(|k| same(k, &keys[i])));
    }
    let mut sorted: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable_by(|a, b| {
        a.len()
            .cmp(&b.len())
            .then_with(|| a.iter().rev().cmp(b.iter().rev()))
    });
    sorted.windows(2).any(|w| w[0] == w[1])
}

pub(super) fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

pub(super) fn check_key(field: &str, key: &str, max: usize) -> Result<()> {
    if key.is_empty() {
        return Err(invalid(format!("{field}: must not be empty")));
    }
    if key.len() > max {
        return Err(invalid(format!(
            "{field}: {} bytes exceeds max_key_bytes ({max})",
            key.len()
        )));
    }
    Ok(())
}

/// A TTL from the wire: at least 1 ms, at most [`MAX_TTL`], rounded up to a
/// whole millisecond (Redis' resolution, so both backends agree).
pub fn check_ttl(field: &str, ttl: &prost_types::Duration) -> Result<Duration> {
    if ttl.seconds < 0 || ttl.nanos < 0 || ttl.nanos >= 1_000_000_000 {
        return Err(invalid(format!("{field}: must be a positive duration")));
    }
    let d = Duration::new(ttl.seconds as u64, ttl.nanos as u32);
    if d < Duration::from_millis(1) {
        return Err(invalid(format!("{field}: must be at least 1ms")));
    }
    if d > MAX_TTL {
        return Err(invalid(format!("{field}: must be at most 365 days")));
    }
    let ms = d.as_nanos().div_ceil(1_000_000) as u64;
    Ok(Duration::from_millis(ms))
}

/// A value within `max_value_bytes`.
pub(super) fn check_value(field: &str, value: &[u8], max: usize) -> Result<()> {
    if value.len() > max {
        return Err(invalid(format!(
            "{field}: {} bytes exceeds max_value_bytes ({max})",
            value.len()
        )));
    }
    Ok(())
}

/// The TTL to store with: the one sent, checked, else `default_ttl`.
pub(super) fn ttl_or(
    field: &str,
    ttl: Option<prost_types::Duration>,
    default: Option<Duration>,
) -> Result<Option<Duration>> {
    match ttl {
        Some(ttl) => check_ttl(field, &ttl).map(Some),
        None => Ok(default),
    }
}

/// The Set condition from the wire; a number the proto does not define is
/// refused rather than read as "always" (a lock must not silently
/// overwrite).
pub(super) fn set_condition(raw: i32) -> Result<SetCondition> {
    match pb::SetCondition::try_from(raw) {
        Ok(pb::SetCondition::Always) => Ok(SetCondition::Always),
        Ok(pb::SetCondition::IfAbsent) => Ok(SetCondition::IfAbsent),
        Ok(pb::SetCondition::IfPresent) => Ok(SetCondition::IfPresent),
        Err(_) => Err(invalid(format!("condition: unknown value {raw}"))),
    }
}

/// The TTL a backend reports, as the API carries it.
pub(super) fn wire_ttl(ttl: Duration) -> prost_types::Duration {
    prost_types::Duration {
        // At most MAX_TTL (a year) plus what Redis was given directly.
        seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        nanos: ttl.subsec_nanos() as i32,
    }
}
