//! The contract of the wave-2 RPCs (Set's condition, MSet, Incr, GetTtl,
//! Persist, Exists), run by `contract.rs` on every backend like the rest.

use std::time::Duration;

use futures_util::future::join_all;
use redis_cache_plugin::pb::SetCondition;
use tonic::Code;

use super::{Fixture, assert_invalid, common::ttl};

/// An MSet entry as the test client takes it.
type Entry<'a> = (&'a str, &'a [u8], Option<prost_types::Duration>);

/// A Duration as the API carries it.
fn pd(seconds: i64, nanos: i32) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos }
}

/// The TTL GetTtl reports for `key`, in milliseconds (None: no expiry).
async fn ttl_ms(f: &mut Fixture, key: &str) -> Option<u128> {
    let r = f.client.get_ttl(key).await.expect("get_ttl");
    assert!(r.found, "{key} exists");
    r.ttl
        .map(|t| Duration::try_from(t).expect("a positive ttl").as_millis())
}

/// The raw PTTL on Redis, else GetTtl's: both backends agree on meaning.
async fn pttl(f: &mut Fixture, key: &str) -> i64 {
    match &f.server {
        Some(server) => server.pttl(&format!("{}{key}", f.prefix)),
        None => ttl_ms(f, key).await.map_or(-1, |ms| ms as i64),
    }
}

fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    let status = r.expect_err("must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{status:?} lacks {needle:?}"
    );
}

pub(super) async fn unconditional_set_reports_written(f: &mut Fixture) {
    let written = f
        .client
        .set_if("k", b"one", None, SetCondition::Always)
        .await;
    assert!(written.expect("set"), "an unconditional Set always writes");
    let written = f
        .client
        .set_if("k", b"two", None, SetCondition::Always)
        .await;
    assert!(written.expect("set"));
    assert_eq!(f.get("k").await.as_deref(), Some(&b"two"[..]));
}

pub(super) async fn set_if_absent_writes_only_a_missing_key(f: &mut Fixture) {
    let lock = ttl(Duration::from_secs(30));
    let first = f
        .client
        .set_if("lock", b"me", lock, SetCondition::IfAbsent)
        .await;
    assert!(first.expect("set"), "a missing key is written");
    let again = f
        .client
        .set_if("lock", b"you", lock, SetCondition::IfAbsent)
        .await;
    assert!(!again.expect("set"), "a present key is not");
    assert_eq!(f.get("lock").await.as_deref(), Some(&b"me"[..]));
    let left = pttl(f, "lock").await;
    assert!((29_000..=30_000).contains(&left), "the lock's TTL: {left}");
}

pub(super) async fn set_if_present_on_a_miss_writes_nothing(f: &mut Fixture) {
    let r = f
        .client
        .set_if("gone", b"v", None, SetCondition::IfPresent)
        .await;
    assert!(!r.expect("set"), "a miss is not written");
    assert_eq!(f.get("gone").await, None, "nothing stored");
    if let Some(server) = &f.server {
        assert_eq!(server.dbsize(), 0, "nothing written");
    }
    f.set("here", b"old", None).await;
    let r = f
        .client
        .set_if("here", b"new", None, SetCondition::IfPresent)
        .await;
    assert!(r.expect("set"), "a present key is written");
    assert_eq!(f.get("here").await.as_deref(), Some(&b"new"[..]));
}

pub(super) async fn set_if_absent_has_one_winner_among_32_callers(f: &mut Fixture) {
    let calls = (0..32).map(|i| {
        let mut client = f.client.clone();
        async move {
            let value = format!("caller-{i}");
            let r = client
                .set_if("race", value.as_bytes(), None, SetCondition::IfAbsent)
                .await;
            (value, r.expect("set"))
        }
    });
    let results = join_all(calls).await;
    assert_eq!(results.len(), 32, "every caller answered");
    let winners: Vec<_> = results.iter().filter(|(_, w)| *w).collect();
    assert_eq!(winners.len(), 1, "exactly one written: {results:?}");
    let stored = f.get("race").await.expect("the winner's value");
    assert_eq!(
        stored,
        winners[0].0.as_bytes(),
        "the winner's value is stored"
    );
}

pub(super) async fn an_unknown_set_condition_is_rejected(f: &mut Fixture) {
    let req = redis_cache_plugin::pb::SetRequest {
        condition: 7,
        ..super::common::set_req("k", b"v")
    };
    assert_invalid(f.client.raw.set(req).await, "condition: unknown value 7");
    assert_eq!(f.get("k").await, None, "nothing written");
}

pub(super) async fn mset_stores_every_entry_with_its_own_ttl(f: &mut Fixture) {
    let (short, long) = (ttl(Duration::from_secs(5)), ttl(Duration::from_secs(300)));
    let entries: [(&str, &[u8], _); 3] = [("a", b"1", short), ("b", b"2", None), ("c", b"3", long)];
    f.client.mset(&entries).await.expect("mset");
    let hits = f.mget(&["a", "b", "c"]).await;
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert_eq!(hits["b"], b"2");
    let a = pttl(f, "a").await;
    assert!((4_000..=5_000).contains(&a), "a: its own 5 s, got {a}");
    let b = pttl(f, "b").await;
    assert!(
        (59_000..=60_000).contains(&b),
        "b: the default 60 s, got {b}"
    );
    let c = pttl(f, "c").await;
    assert!(
        (299_000..=300_000).contains(&c),
        "c: its own 300 s, got {c}"
    );
}

pub(super) async fn mset_limits_are_enforced_and_nothing_written(f: &mut Fixture) {
    let v: &[u8] = b"v";
    let six: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    let six: Vec<_> = six.iter().map(|k| (k.as_str(), v, None)).collect();
    let long = "k".repeat(65);
    let big = [0u8; 1025];
    let cases: [(Vec<Entry<'_>>, &str); 7] = [
        (vec![], "entries: must hold at least one entry"),
        (six, "6 entries exceeds max_batch_keys (5)"),
        (
            vec![("ok", v, None), ("", v, None)],
            "entries[1].key: must not be empty",
        ),
        (
            vec![(&long, v, None)],
            "entries[0].key: 65 bytes exceeds max_key_bytes (64)",
        ),
        (
            vec![("ok", v, None), ("big", &big, None)],
            "entries[1].value: 1025 bytes exceeds max_value_bytes (1024)",
        ),
        (
            vec![("ok", v, Some(pd(0, 0)))],
            "entries[0].ttl: must be at least 1ms",
        ),
        (
            vec![("a", v, None), ("b", v, None), ("a", v, None)],
            "entries[2].key: repeats entries[0].key",
        ),
    ];
    for (entries, needle) in cases {
        assert_invalid(f.client.mset(&entries).await, needle);
    }
    assert_eq!(f.get("ok").await, None, "nothing written");
    if let Some(server) = &f.server {
        assert_eq!(server.dbsize(), 0, "nothing written");
    }
}

pub(super) async fn incr_counts_from_zero_and_sets_the_ttl_only_on_create(f: &mut Fixture) {
    let thirty = ttl(Duration::from_secs(30));
    assert_eq!(f.client.incr("n", 5, thirty).await.expect("incr"), 5);
    let created = pttl(f, "n").await;
    assert!(
        (29_000..=30_000).contains(&created),
        "created with 30 s: {created}"
    );
    let longer = ttl(Duration::from_secs(300));
    assert_eq!(f.client.incr("n", -7, longer).await.expect("incr"), -2);
    let kept = pttl(f, "n").await;
    assert!(
        (1..=30_000).contains(&kept),
        "an existing counter keeps its TTL: {kept}"
    );
    assert_eq!(
        f.get("n").await.as_deref(),
        Some(&b"-2"[..]),
        "stored as a decimal"
    );
    assert_eq!(f.client.incr("d", 1, None).await.expect("incr"), 1);
    let default = pttl(f, "d").await;
    assert!(
        (59_000..=60_000).contains(&default),
        "default_ttl on create: {default}"
    );
}

pub(super) async fn incr_on_a_non_integer_is_failed_precondition(f: &mut Fixture) {
    f.set("text", b"abc", None).await;
    let r = f.client.incr("text", 1, None).await;
    assert_code(r, Code::FailedPrecondition, "not an integer");
    assert_eq!(
        f.get("text").await.as_deref(),
        Some(&b"abc"[..]),
        "unchanged"
    );
    f.set("max", i64::MAX.to_string().as_bytes(), None).await;
    let r = f.client.incr("max", 1, ttl(Duration::from_secs(5))).await;
    assert_code(r, Code::FailedPrecondition, "overflow");
    if let Some(server) = &f.server {
        let list = format!("{}list", f.prefix);
        let mut admin = server.admin_for(&list);
        let _: i64 = ::redis::cmd("RPUSH")
            .arg(&list)
            .arg("x")
            .query(&mut admin)
            .expect("RPUSH");
        let r = f.client.incr("list", 1, ttl(Duration::from_secs(5))).await;
        assert_code(r, Code::FailedPrecondition, "another type");
    }
}

pub(super) async fn incr_limits_are_enforced_and_nothing_written(f: &mut Fixture) {
    assert_invalid(f.client.incr("", 1, None).await, "key: must not be empty");
    let long = "k".repeat(65);
    assert_invalid(f.client.incr(&long, 1, None).await, "max_key_bytes (64)");
    let r = f.client.incr("n", 1, Some(pd(-1, 0))).await;
    assert_invalid(r, "ttl: must be a positive duration");
    assert_eq!(f.get("n").await, None, "nothing written");
}

pub(super) async fn get_ttl_tells_a_miss_from_no_expiry(f: &mut Fixture) {
    let miss = f.client.get_ttl("never").await.expect("get_ttl");
    assert!(!miss.found && miss.ttl.is_none(), "{miss:?}");
    f.set("k", b"v", Some(Duration::from_secs(30))).await;
    let left = ttl_ms(f, "k").await.expect("a ttl");
    assert!((29_000..=30_000).contains(&left), "{left}");
    f.client.persist("k").await.expect("persist");
    assert_eq!(ttl_ms(f, "k").await, None, "no expiry: ttl unset");
    assert_invalid(f.client.get_ttl("").await, "key: must not be empty");
}

pub(super) async fn persist_reports_found_and_ttl_removed(f: &mut Fixture) {
    let miss = f.client.persist("never").await.expect("persist");
    assert!(!miss.found && !miss.ttl_removed, "{miss:?}");
    f.set("k", b"v", Some(Duration::from_secs(30))).await;
    let first = f.client.persist("k").await.expect("persist");
    assert!(first.found && first.ttl_removed, "{first:?}");
    assert_eq!(pttl(f, "k").await, -1, "no TTL left");
    let again = f.client.persist("k").await.expect("persist");
    assert!(again.found && !again.ttl_removed, "{again:?}");
    assert_eq!(f.get("k").await.as_deref(), Some(&b"v"[..]), "value kept");
    let long = "k".repeat(65);
    assert_invalid(f.client.persist(&long).await, "max_key_bytes (64)");
}

pub(super) async fn exists_counts_each_key_once(f: &mut Fixture) {
    f.set("a", b"1", None).await;
    f.set("b", b"2", None).await;
    let n = f
        .client
        .exists(["a", "b", "a", "c", "b"])
        .await
        .expect("exists");
    assert_eq!(n, 2, "a and b, each once");
    assert_eq!(f.client.exists(["c"]).await.expect("exists"), 0);
    let six: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    assert_invalid(
        f.client.exists(&six).await,
        "6 keys exceeds max_batch_keys (5)",
    );
    assert_invalid(
        f.client.exists(Vec::<String>::new()).await,
        "keys: must hold at least one key",
    );
    assert_invalid(
        f.client.exists(["a", ""]).await,
        "keys[1]: must not be empty",
    );
}

/// With no TTL given and `default_ttl: none`, Incr is a plain INCRBY on
/// Redis (no transaction): the counter never expires, and a refusal comes
/// as a top-level error reply rather than inside EXEC's, mapped the same.
pub(super) async fn incr_without_any_ttl_never_expires(f: &mut Fixture) {
    let prefix = format!("{}nottl:", f.prefix);
    let mut config = match &f.server {
        Some(server) => server.config(&prefix),
        None => super::common::memory_config(&prefix),
    };
    config.backend.default_ttl = redis_cache_plugin::config::Ttl(None);
    let plugin = super::Plugin::start_serving(config).await;
    let mut client = plugin.cache().await;
    assert_eq!(client.incr("n", 2, None).await.expect("incr"), 2);
    assert_eq!(client.incr("n", 3, None).await.expect("incr"), 5);
    let r = client.get_ttl("n").await.expect("get_ttl");
    assert!(r.found && r.ttl.is_none(), "no expiry: {r:?}");
    if let Some(server) = &f.server {
        assert_eq!(server.pttl(&format!("{prefix}n")), -1, "no TTL in Redis");
    }
    client.set("text", b"1.5").await.expect("set");
    let r = client.incr("text", 1, None).await;
    assert_code(r, Code::FailedPrecondition, "not an integer");
    plugin.stop().await;
}
