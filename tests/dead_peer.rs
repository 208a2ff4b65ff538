//! Dead-peer detection end to end, on Redis and Valkey: the plugin (a child
//! process) reaches the server through the black-hole proxy; the
//! connections open at that moment are black-holed (bytes vanish, no RST,
//! no FIN) while new ones still get through, as when one network path dies.
//! The fault is asserted first (a call stalls into DEADLINE_EXCEEDED, bytes
//! vanished, no connection was closed), then the recovery: the pool
//! declares the silent connections dead, replaces them, and calls succeed
//! again, with the metric and a warn line naming the node.
//!
//! The time to recover is printed (the figure for the issue); the only
//! time assertion is a generous correctness bound.

mod common;

use std::time::{Duration, Instant};

use common::{CACHE_USER, Flavor, PluginProcess, RedisServer, blackhole::BlackHole, test_prefix};
use tonic::Code;

twin_tests!(black_holed_connections_are_declared_dead_and_replaced);

/// The plugin's `operation_timeout`; connections are declared dead after a
/// reply is overdue by three of them (1.5 s).
const OP_TIMEOUT: &str = "500ms";

/// Past this the pool is taken to be stuck (the bound plus a reconnect is
/// about 2 s; this allows a loaded CI machine).
const RECOVER_WITHIN: Duration = Duration::from_secs(10);

/// Consecutive successful calls that count as recovered: with two
/// connections round-robin, a stuck one would fail some of them.
const STREAK: usize = 10;

async fn black_holed_connections_are_declared_dead_and_replaced(flavor: Flavor) {
    let server = RedisServer::start(flavor);
    let proxy = BlackHole::start(&server.address());
    let backend =
        format!("  username: {CACHE_USER}\n  operation_timeout: {OP_TIMEOUT}\n  pool_size: 2\n");
    let mut plugin = PluginProcess::start_at(
        &proxy.address(),
        Some(&server.cache_password),
        &test_prefix("dead_peer"),
        "",
        &backend,
    );
    let mut cache = plugin.cache().await;
    cache.wait_answering().await;
    for i in 0..STREAK {
        cache.set(&format!("k{i}"), b"v").await.expect("set before");
    }
    let before = proxy.connections();
    assert!(before >= 2, "the pool's connections go through the proxy");

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

    let dead = metric(&plugin, "redis_plugin_dead_connections_total").await;
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

/// Gets until [`STREAK`] in a row hit, or `deadline`; returns when the first
/// of that run was served.
async fn streak_of_hits(cache: &mut common::client::Cache, deadline: Instant) -> Option<Instant> {
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

/// A metric's value from the plugin's `/metrics` (0 when absent).
async fn metric(plugin: &PluginProcess, name: &str) -> f64 {
    // reqwest here has TLS without a provider; plain HTTP still builds one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scrape = reqwest::get(format!("http://{}/metrics", plugin.addr));
    let text = scrape.await.and_then(|r| r.error_for_status());
    let text = text.expect("scrape").text().await.expect("body");
    let sample = |l: &str| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok();
    text.lines().find_map(sample).unwrap_or(0.0)
}
