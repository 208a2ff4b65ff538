//! When to ask the sentinels, and what to do with their answers: the one
//! `follow` task of a Sentinel router.
//!
//! It asks at start, when woken (a call failed, a subscription was
//! (re)made), when the master's pool has no connection (looked at every
//! [`POLL`]: a pool's state is two atomic loads per slot, cheaper than
//! having every pool call back), and every [`SAFETY_NET`] regardless. At
//! most once per [`MIN_GAP`] (backing off to [`MAX_GAP`] while the master
//! stays down and the sentinels name no other), so a burst of failing
//! calls costs the sentinels ten questions a second at most. A master
//! other than the one in use is switched to only after a connection to it
//! passed the `ROLE` check, so a stale answer never takes calls away from
//! a working master.
//!
//! Not owned here: the questions themselves (`ask`), `+switch-master`
//! (`subscribe`), the pools.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Inner, ask};
use crate::{
    backend::redis::pool::Pool,
    shutdown::{Phase, Watch},
};

/// How often the master's pool is looked at.
const POLL: Duration = Duration::from_millis(200);

/// Least time between two rounds of questions.
const MIN_GAP: Duration = Duration::from_millis(100);

/// Most time between two rounds while the master stays down.
const MAX_GAP: Duration = Duration::from_millis(800);

/// Ask this often even when all is well: a missed `+switch-master` whose
/// old master still answers (demoted, with connections open) is caught here
/// at the latest (its `READONLY` replies to writes trigger a question
/// sooner).
pub(super) const SAFETY_NET: Duration = Duration::from_secs(15);

/// The follow task; ends at [`Phase::Stopped`].
pub(super) async fn follow(inner: Arc<Inner>, mut shutdown: Watch) {
    let mut last: Option<Instant> = None;
    let mut gap = MIN_GAP;
    let mut woken = true;
    loop {
        let down = inner.master_down();
        let stale = last.is_none_or(|t| t.elapsed() >= SAFETY_NET);
        if woken || down || stale {
            if let Some(t) = last {
                tokio::select! {
                    biased;
                    () = shutdown.reached(Phase::Stopped) => return,
                    () = tokio::time::sleep_until(t + gap) => {}
                }
            }
            let suspect = inner.suspect.swap(false, Ordering::AcqRel) || down;
            let moved = tokio::select! {
                biased;
                () = shutdown.reached(Phase::Stopped) => return,
                moved = refresh(&inner, suspect) => moved,
            };
            // A master that stays down while the sentinels keep naming it
            // (an outage, a node refusing ROLE): ask less often, up to
            // MAX_GAP; `+switch-master` is still followed at once.
            gap = if moved || !down {
                MIN_GAP
            } else {
                (gap * 2).min(MAX_GAP)
            };
            last = Some(Instant::now());
        }
        woken = tokio::select! {
            biased;
            () = shutdown.reached(Phase::Stopped) => return,
            () = inner.ask_now.notified() => true,
            () = tokio::time::sleep(POLL) => false,
        };
    }
}

/// One round: ask every sentinel, pick an answer, and switch to it (away
/// from a master in use only once it proved to be the master). True when
/// the router moved.
async fn refresh(inner: &Inner, suspect: bool) -> bool {
    let answers = inner.sentinels.ask_all().await;
    let current = inner.master.load_full();
    let in_use = current.as_ref().map(|p| p.address());
    // A subscriber may have switched while the sentinels were asked.
    let unchanged = |now: Option<&Pool>| now.map(Pool::address) == in_use;
    match ask::choose(&answers, in_use, suspect) {
        Some(address) if Some(address.as_str()) == in_use => return false,
        // Nothing to lose yet: the pool connects when the master answers.
        Some(address) if in_use.is_none() => {
            inner.switch_to(&address, "sentinels asked", unchanged);
        }
        Some(address) => {
            if !is_master(inner, &address).await {
                return false;
            }
            inner.switch_to(&address, "sentinels asked", unchanged);
        }
        None => report_unnamed(inner, &answers),
    }
    let now = inner.master.load();
    now.as_deref().map(Pool::address) != in_use
}

/// Opens one connection to `address` as the pool would (the handshake
/// asks `ROLE`): true when it is the master now.
async fn is_master(inner: &Inner, address: &str) -> bool {
    let Ok(connector) = inner.settings.connector(address) else {
        return false;
    };
    match connector.connect(&inner.creds.current()).await {
        Ok(_) => true,
        Err(e) => {
            debug!(master = %address, error = %e, "a node a sentinel named is not the master (yet)");
            false
        }
    }
}

/// Logs why no sentinel named a master: at warn once per outage (health
/// says NOT_SERVING meanwhile; this is its reason), then at debug.
fn report_unnamed(inner: &Inner, answers: &[ask::Answer]) {
    let reasons: Vec<String> = inner
        .sentinels
        .nodes
        .iter()
        .zip(answers)
        .map(|((address, _), answer)| match answer {
            Ok(named) => format!("{address}: named {named}"),
            Err(why) => format!("{address}: {why}"),
        })
        .collect();
    let name = &inner.sentinels.master_name;
    if inner.unnamed_logged.swap(true, Ordering::Relaxed) {
        debug!(master = %name, reasons = %reasons.join("; "), "sentinel: still no master known");
    } else {
        warn!(master = %name, reasons = %reasons.join("; "), "sentinel: no sentinel names the master; calls fail UNAVAILABLE until one does");
    }
}
