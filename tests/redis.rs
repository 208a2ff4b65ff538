//! Behaviour that needs a real Redis behind the plugin: ACL enforcement,
//! outages and recovery, health following Redis, database selection.

mod common;

use std::time::{Duration, Instant};

use common::{Flavor, NOT_SERVING, Plugin, RedisServer, SERVING, redis_config, test_prefix};
use redis_cache_plugin::config::Secret;
use tonic::Code;

twin_tests!(
    key_outside_acl_pattern_is_permission_denied,
    server_down_is_unavailable_within_timeout_and_recovers,
);

async fn key_outside_acl_pattern_is_permission_denied(flavor: Flavor) {
    let server = RedisServer::start(flavor);
    // The cache user may only touch `cache:*`; this prefix is outside it.
    let config = redis_config(&server, "forbidden:");
    let plugin = Plugin::start_serving(config).await;
    let mut client = plugin.cache().await;
    let err = client.set("k", b"v").await.expect_err("NOPERM");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = client.get("k").await.expect_err("NOPERM");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(server.dbsize(), 0, "nothing written");
    plugin.stop().await;
}

#[tokio::test]
async fn wrong_password_never_serves() {
    let server = RedisServer::start(Flavor::Valkey);
    let mut config = redis_config(&server, &test_prefix("wrongpass"));
    config.backend.password = Secret::new("not-the-password");
    let plugin = Plugin::start(config).await;
    assert!(
        !plugin
            .wait_health(SERVING, Duration::from_millis(800))
            .await
    );
    let err = plugin
        .cache()
        .await
        .get("k")
        .await
        .expect_err("no connection");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(!err.message().contains("not-the-password"));
    plugin.stop().await;
}

async fn server_down_is_unavailable_within_timeout_and_recovers(flavor: Flavor) {
    let mut server = RedisServer::start(flavor);
    let prefix = test_prefix("down");
    let plugin = Plugin::start_serving(redis_config(&server, &prefix)).await;
    let mut client = plugin.cache().await;
    client.set("before", b"1").await.expect("set while up");

    server.kill();
    // Every call fails fast with UNAVAILABLE (or the deadline), never hangs.
    for _ in 0..20 {
        let started = Instant::now();
        let err = client.get("before").await.expect_err("redis is down");
        assert!(
            matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(
        plugin
            .wait_health(NOT_SERVING, Duration::from_secs(3))
            .await
    );

    server.restart();
    let answered = Instant::now();
    assert!(plugin.wait_health(SERVING, Duration::from_secs(5)).await);
    let within = Duration::from_secs(5).saturating_sub(answered.elapsed());
    let ok = client.set_succeeds_within("after", b"2", within).await;
    assert!(ok, "plugin recovered after Redis came back");
    let r = client.get("after").await.expect("get after recovery");
    assert!(r.found);
    plugin.stop().await;
}

#[tokio::test]
async fn health_tracks_redis_for_every_service_name() {
    let mut server = RedisServer::start(Flavor::Valkey);
    let plugin = Plugin::serving_on(&server, "health").await;
    for name in ["", "cache.v1.Cache", "redis"] {
        assert_eq!(plugin.health(name).await, SERVING, "service {name:?}");
    }
    server.kill();
    assert!(
        plugin
            .wait_health(NOT_SERVING, Duration::from_secs(3))
            .await
    );
    for name in ["cache.v1.Cache", "redis"] {
        assert_eq!(plugin.health(name).await, NOT_SERVING, "service {name:?}");
    }
    server.restart();
    assert!(plugin.wait_health(SERVING, Duration::from_secs(5)).await);
    plugin.stop().await;
}

#[tokio::test]
async fn killed_connections_are_replaced_without_errors_for_reads() {
    let server = RedisServer::start(Flavor::Redis);
    let plugin = Plugin::serving_on(&server, "clientkill").await;
    let mut client = plugin.cache().await;
    client.set("k", b"v").await.expect("set");
    let killed: i64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(common::CACHE_USER)
        .query(&mut server.admin())
        .expect("CLIENT KILL");
    assert!(killed >= 1);
    // Dropped connections are retried on another one and repaired.
    let mut failures = 0;
    for _ in 0..50 {
        if client.get("k").await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 0, "{failures} failures after CLIENT KILL");
    plugin.stop().await;
}

#[tokio::test]
async fn database_selection_is_honoured() {
    let server = RedisServer::start(Flavor::Redis);
    let mut admin = server.admin();
    // The restricted user may SELECT for this test.
    ::redis::cmd("ACL")
        .arg("SETUSER")
        .arg(common::CACHE_USER)
        .arg("+select")
        .query::<()>(&mut admin)
        .expect("ACL SETUSER");
    let prefix = test_prefix("db");
    let mut config = redis_config(&server, &prefix);
    config.backend.database = 3;
    let plugin = Plugin::start_serving(config).await;
    plugin.cache().await.set("k", b"v").await.expect("set");
    ::redis::cmd("SELECT")
        .arg(3)
        .query::<()>(&mut admin)
        .expect("SELECT");
    let v: Option<Vec<u8>> = ::redis::cmd("GET")
        .arg(format!("{prefix}k"))
        .query(&mut admin)
        .expect("GET");
    assert_eq!(v.as_deref(), Some(&b"v"[..]));
    assert_eq!(server.dbsize(), 0, "database 0 untouched");
    plugin.stop().await;
}

#[tokio::test]
async fn mget_of_many_keys_is_one_consistent_answer() {
    let server = RedisServer::start(Flavor::Valkey);
    let plugin = Plugin::serving_on(&server, "mgetmany").await;
    let mut client = plugin.cache().await;
    for i in 0..100 {
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        client.set(&key, value.as_bytes()).await.expect("set");
    }
    let keys = (0..200).map(|i| format!("k{i}"));
    let hits = client.mget(keys).await.expect("mget").hits;
    assert_eq!(hits.len(), 100);
    assert_eq!(hits["k42"].as_ref(), b"v42");
    plugin.stop().await;
}

/// Replies far larger than one socket read, several in flight at once on
/// the same connections, come back whole and each to its own caller: the
/// pipelined connection reassembles them across reads and keeps them in
/// order.
#[tokio::test]
async fn large_replies_in_flight_together_arrive_whole_and_in_order() {
    let server = RedisServer::start(Flavor::Redis);
    let mut config = redis_config(&server, &test_prefix("large"));
    config.backend.pool_size = 1;
    config.backend.max_value_bytes = 1 << 20;
    let plugin = Plugin::start_serving(config).await;
    let mut client = plugin.cache().await;
    // A distinct byte pattern per key, so a value in the wrong place shows.
    let value = |i: usize, len: usize| -> Vec<u8> {
        (0..len).map(|j| ((i * 31 + j) % 251) as u8).collect()
    };
    for i in 0..100 {
        let key = format!("m{i}");
        client.set(&key, &value(i, 4096)).await.expect("set");
    }
    client
        .set("big", &value(7, 1 << 20))
        .await
        .expect("set big");
    let calls = (0..16).map(|round| {
        let mut c = client.clone();
        async move {
            if round % 4 == 0 {
                let got = c.get("big").await.expect("get big");
                assert_eq!(got.value.as_ref(), value(7, 1 << 20).as_slice());
            } else {
                let keys = (0..100).map(|i| format!("m{i}"));
                let hits = c.mget(keys).await.expect("mget").hits;
                assert_eq!(hits.len(), 100);
                for i in 0..100 {
                    assert_eq!(
                        hits[&format!("m{i}")].as_ref(),
                        value(i, 4096).as_slice(),
                        "m{i}"
                    );
                }
            }
        }
    });
    futures_util::future::join_all(calls).await;
    plugin.stop().await;
}

#[tokio::test]
async fn health_is_not_serving_before_redis_has_answered() {
    let server = RedisServer::start(Flavor::Redis);
    // Paused: the kernel accepts connections but nothing answers, and the
    // probe's timeout is 5 s, so for the first seconds no probe has a result
    // and what health says is the state it starts in.
    server.signal("STOP");
    let mut config = redis_config(&server, &test_prefix("early"));
    config.backend.operation_timeout = redis_cache_plugin::config::Dur(Duration::from_secs(5));
    let started = Instant::now();
    let plugin = Plugin::start(config).await;
    for name in ["", "cache.v1.Cache", "redis"] {
        assert_eq!(plugin.health(name).await, NOT_SERVING, "service {name:?}");
    }
    assert_eq!(plugin.health("liveness").await, SERVING);
    let checked = started.elapsed();
    assert!(
        checked < Duration::from_secs(4),
        "checked after {checked:?}"
    );
    // The fault was real and is the only reason: once Redis answers, the
    // same plugin turns SERVING.
    server.signal("CONT");
    assert!(
        plugin.wait_health(SERVING, Duration::from_secs(15)).await,
        "SERVING once Redis answers"
    );
    plugin.stop().await;
}
