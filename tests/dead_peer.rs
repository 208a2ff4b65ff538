//! Dead-peer detection end to end, on Redis and Valkey: the plugin (a child
//! process) reaches the server through the black-hole proxy; the
//! connections open at that moment are black-holed (bytes vanish, no RST,
//! no FIN) while new ones still get through, as when one network path dies.
//! The fault is asserted first (a call stalls into DEADLINE_EXCEEDED, bytes
//! vanished, no connection was closed), then the recovery: the pool
//! declares the silent connections dead, replaces them, and calls succeed
//! again, with the metric and a warn line naming the node.
//!
//! A connection that breaks while idle (closed by the peer here; TCP
//! keepalive giving up takes the same path) is replaced by the same
//! watchdog before any call needs it. And the other side of the bound: a stall shorter than it (the proxy
//! holds bytes, then delivers them, as a slow but alive Redis would) keeps
//! every connection.
//!
//! The time to recover is printed (the figure for the issue); the only
//! time assertions are generous correctness bounds.

mod common;

use std::time::{Duration, Instant};

use common::{
    CACHE_USER, Flavor, PluginProcess, RedisServer,
    blackhole::{BlackHole, Mode},
    client::Cache,
    test_prefix,
};
use tonic::Code;

twin_tests!(
    black_holed_connections_are_declared_dead_and_replaced,
    a_stall_below_the_bound_keeps_every_connection,
    connections_closed_while_idle_are_replaced_without_a_call,
);

/// The plugin's `operation_timeout`; connections are declared dead after a
/// reply is overdue by three of them (1.5 s).
const OP_TIMEOUT: &str = "500ms";

/// Past this the pool is taken to be stuck (the bound plus a reconnect is
/// about 2 s; this allows a loaded CI machine).
const RECOVER_WITHIN: Duration = Duration::from_secs(10);

/// Consecutive successful calls that count as recovered: with two
/// connections round-robin, a stuck one would fail some of them.
const STREAK: usize = 10;

/// A server, the proxy in front of it, and the plugin (two connections,
/// `op_timeout`) on the proxy, serving keys `k0..k{STREAK}`.
struct Setup {
    server: RedisServer,
    proxy: BlackHole,
    plugin: PluginProcess,
    cache: Cache,
}

async fn setup(flavor: Flavor, op_timeout: &str) -> Setup {
    setup_with(flavor, op_timeout, "").await
}

/// [`setup`] with `control_plane` flow pairs for the plugin.
async fn setup_with(flavor: Flavor, op_timeout: &str, control_plane: &str) -> Setup {
    let server = RedisServer::start(flavor);
    let proxy = BlackHole::start(&server.address());
    let backend =
        format!("  username: {CACHE_USER}\n  operation_timeout: {op_timeout}\n  pool_size: 2\n");
    let plugin = PluginProcess::start_at(
        &proxy.address(),
        Some(&server.cache_password),
        &test_prefix("dead_peer"),
        control_plane,
        &backend,
    );
    let mut cache = plugin.cache().await;
    cache.wait_answering().await;
    for i in 0..STREAK {
        cache.set(&format!("k{i}"), b"v").await.expect("set before");
    }
    assert!(
        proxy.connections() >= 2,
        "the pool's connections go through the proxy"
    );
    Setup {
        server,
        proxy,
        plugin,
        cache,
    }
}

async fn black_holed_connections_are_declared_dead_and_replaced(flavor: Flavor) {
    let Setup {
        server,
        proxy,
        mut plugin,
        mut cache,
    } = setup(flavor, OP_TIMEOUT).await;
    let before = proxy.connections();

    proxy.black_hole_existing();
    let holed_at = Instant::now();
    let stalled = cache
        .get("k0")
        .await
        .expect_err("a call on a silent connection");
    assert_eq!(stalled.code(), Code::DeadlineExceeded, "{stalled:?}");
    assert!(proxy.vanished_bytes() > 0, "the command really vanished");
    assert_eq!(proxy.open_connections(), before, "nothing was closed");

    let recovered = streak_of_hits(&mut cache, holed_at + RECOVER_WITHIN).await;
    let done = holed_at.elapsed();
    let first = recovered.unwrap_or_else(|| {
        panic!(
            "the pool stayed stuck for {RECOVER_WITHIN:?}; log:\n{}",
            plugin.log()
        )
    }) - holed_at;
    println!(
        "{flavor:?}: black-holed connections replaced: first call served {first:.2?}, \
         {STREAK} in a row {done:.2?} after the black hole (operation_timeout {OP_TIMEOUT})"
    );
    assert!(proxy.connections() > before, "new connections were opened");

    let dead = common::metric(plugin.addr, "redis_plugin_dead_connections_total").await;
    assert!(dead >= 1.0, "dead connections counted: {dead}");
    let log = plugin.log();
    let line = log
        .lines()
        .find(|l| l.contains("declared dead"))
        .unwrap_or_else(|| panic!("no warn line; log:\n{log}"));
    println!("{flavor:?}: {line}");
    assert!(line.contains(&proxy.address()), "names the node: {line}");
    assert!(
        !log.contains(&server.cache_password),
        "no secret in the log"
    );
}

/// Held traffic for less than the bound (3 s here: `operation_timeout`
/// 1 s): calls time out meanwhile, but once the bytes flow again the same
/// connections serve, and none was declared dead.
async fn a_stall_below_the_bound_keeps_every_connection(flavor: Flavor) {
    let Setup {
        server: _server,
        proxy,
        mut plugin,
        mut cache,
    } = setup(flavor, "1s").await;
    let before = proxy.connections();

    proxy.set_mode(Mode::Hold);
    let held_at = Instant::now();
    let stalled = cache.get("k0").await.expect_err("a call while held");
    assert_eq!(stalled.code(), Code::DeadlineExceeded, "{stalled:?}");
    // Half the bound in all: a reply overdue this long is slow, not dead.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(held_at.elapsed())).await;
    proxy.resume();
    let held_for = held_at.elapsed();

    let served = streak_of_hits(&mut cache, Instant::now() + RECOVER_WITHIN).await;
    assert!(
        served.is_some(),
        "serves after the stall; log:\n{}",
        plugin.log()
    );
    println!("{flavor:?}: held {held_for:.2?} (bound 3 s): no connection replaced");
    assert_eq!(proxy.connections(), before, "the same connections");
    assert_eq!(
        common::metric(plugin.addr, "redis_plugin_dead_connections_total").await,
        0.0
    );
    let log = plugin.log();
    assert!(!log.contains("declared dead"), "{log}");
}

/// Both sides of every connection closed, and no call made afterwards (the
/// health probe, which would find them, is set to an hour): the pool still
/// opens new ones within a few watchdog ticks.
async fn connections_closed_while_idle_are_replaced_without_a_call(flavor: Flavor) {
    let Setup {
        server: _server,
        proxy,
        mut plugin,
        mut cache,
    } = setup_with(flavor, OP_TIMEOUT, "health_interval: 1h").await;
    let before = proxy.connections();

    // New connections are the evidence the old ones closed: the pool
    // opens one only for an empty slot.
    proxy.close_all();
    let replaced = common::poll(RECOVER_WITHIN, Duration::from_millis(20), || {
        proxy.connections() >= before + 2
    });
    assert!(
        replaced,
        "{} of 2 connections reopened; log:\n{}",
        proxy.connections() - before,
        plugin.log()
    );
    let hit = cache
        .get("k0")
        .await
        .expect("served on the new connections");
    assert!(hit.found);
    let dead = common::metric(plugin.addr, "redis_plugin_dead_connections_total").await;
    assert_eq!(dead, 0.0, "a close is not a dead peer");
}

/// Gets until [`STREAK`] in a row hit, or `deadline`; returns when the first
/// of that run was served.
async fn streak_of_hits(cache: &mut Cache, deadline: Instant) -> Option<Instant> {
    let mut first_ok: Option<Instant> = None;
    let mut run = 0;
    while Instant::now() < deadline {
        let key = format!("k{}", run % STREAK);
        match cache.get(&key).await {
            Ok(r) if r.found => {
                first_ok.get_or_insert_with(Instant::now);
                run += 1;
                if run == STREAK {
                    return first_ok;
                }
            }
            _ => {
                (first_ok, run) = (None, 0);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    None
}
