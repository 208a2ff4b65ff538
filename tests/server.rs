//! The plugin as operators meet it: one port serving gRPC, health,
//! reflection (checked with the real grpcurl) and `/metrics`; the binary's
//! config errors and its SIGTERM drain.

mod common;

use std::{process::Command, time::Duration};

use common::{
    Cache, Flavor, Plugin, RedisServer, http_get, memory_config,
    plugin::{self, PluginCommand},
    test_prefix,
};

fn grpcurl(args: &[&str]) -> (bool, String) {
    let path = common::tool("grpcurl").expect("grpcurl on PATH (scripts/deps.sh installs it)");
    let out = Command::new(path).args(args).output().expect("run grpcurl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// README's grpcurl lines for the wave-2 RPCs, run as written (JSON
/// enum names, int64 as a string) against Redis: each answers as README
/// says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_readme_examples_of_the_added_rpcs_work() {
    let server = RedisServer::start(Flavor::Redis);
    let plugin = Plugin::serving_on(&server, "grpcurl-added").await;
    let addr = plugin.addr.to_string();
    let lock = r#"{"key":"lock:job7","value":"b3duZXI=","ttl":"30s","condition":"SET_CONDITION_IF_ABSENT"}"#;
    let cases = [
        ("Set", lock, r#""written": true"#),
        // A second lock attempt: written false, which JSON leaves out.
        ("Set", lock, "{"),
        (
            "MSet",
            r#"{"entries":[{"key":"a","value":"MQ==","ttl":"5s"},{"key":"b","value":"Mg=="}]}"#,
            "{",
        ),
        (
            "Incr",
            r#"{"key":"rate:client42","delta":"1","ttl":"60s"}"#,
            r#""value": "1""#,
        ),
        ("GetTtl", r#"{"key":"rate:client42"}"#, r#""ttl": "#),
        (
            "Persist",
            r#"{"key":"rate:client42"}"#,
            r#""ttlRemoved": true"#,
        ),
        ("Exists", r#"{"keys":["a","b","nope"]}"#, r#""count": "2""#),
    ];
    for (rpc, body, want) in cases {
        let method = format!("cache.v1.Cache/{rpc}");
        let (ok, out) = grpcurl(&["-plaintext", "-d", body, &addr, &method]);
        assert!(
            ok && out.contains(want),
            "{rpc} {body}: want {want}, got {out}"
        );
        if want == "{" {
            assert!(!out.contains("true"), "{rpc} {body}: {out}");
        }
    }
    plugin.stop().await;
}

// grpcurl blocks its thread; the in-process server needs another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_smoke_health_set_get_round_trip() {
    let server = RedisServer::start(Flavor::Redis);
    let plugin = Plugin::serving_on(&server, "grpcurl").await;
    let addr = plugin.addr.to_string();

    let (ok, out) = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "{out}");

    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"key":"smoke","value":"aGVsbG8=","ttl":"30s"}"#,
        &addr,
        "cache.v1.Cache/Set",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"key":"smoke"}"#,
        &addr,
        "cache.v1.Cache/Get",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("\"found\": true") && out.contains("aGVsbG8="),
        "{out}"
    );
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_services() {
    let plugin = Plugin::start_serving(memory_config("refl:")).await;
    let addr = plugin.addr.to_string();
    let (ok, out) = grpcurl(&["-plaintext", &addr, "list"]);
    assert!(ok, "{out}");
    for svc in ["cache.v1.Cache", "grpc.health.v1.Health", "grpc.reflection"] {
        assert!(out.contains(svc), "{svc} missing from:\n{out}");
    }
    let (ok, out) = grpcurl(&["-plaintext", &addr, "describe", "cache.v1.Cache"]);
    assert!(ok, "{out}");
    let rpcs = [
        "Get", "Set", "Delete", "MGet", "Expire", "MSet", "Incr", "GetTtl", "Persist", "Exists",
    ];
    for rpc in rpcs {
        assert!(out.contains(&format!("rpc {rpc}")), "{rpc} missing:\n{out}");
    }
    let (ok, out) = grpcurl(&["-plaintext", &addr, "describe", "cache.v1.SetRequest"]);
    assert!(ok && out.contains("google.protobuf.Duration ttl"), "{out}");
    plugin.stop().await;
}

#[tokio::test]
async fn metrics_are_served_on_the_grpc_port() {
    let server = RedisServer::start(Flavor::Redis);
    let plugin = Plugin::serving_on(&server, "metrics").await;
    let mut client = plugin.cache().await;
    client.set("m", b"v").await.expect("set");
    client.get("m").await.expect("hit");
    client.get("x").await.expect("miss");
    let addr = plugin.addr;
    let body = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .expect("scrape");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for needle in [
        "redis_plugin_operations_total{operation=\"get\",status=\"ok\"} 2",
        "redis_plugin_operations_total{operation=\"set\",status=\"ok\"} 1",
        "redis_plugin_operation_duration_seconds_bucket",
        "redis_plugin_cache_hits_total 1",
        "redis_plugin_cache_misses_total 1",
        "redis_plugin_pool_size 4",
        "redis_plugin_pool_connections{state=\"idle\"}",
        "redis_plugin_health_status 1",
    ] {
        assert!(body.contains(needle), "{needle} missing:\n{body}");
    }
    assert!(
        !body.contains(&server.cache_password),
        "no secret in metrics"
    );
    plugin.stop().await;
}

#[test]
fn bad_config_stops_startup_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("backend:\n  adress: x\n", "backend.adress"),
        ("backend:\n  pool_size: lots\n", "backend.pool_size"),
        (
            "backend:\n  operation_timeout: soon\n",
            "backend.operation_timeout",
        ),
        ("backend:\n  address: \"\"\n", "backend.address"),
        (
            "control_plane:\n  listen: nowhere\n",
            "control_plane.listen",
        ),
    ];
    for (yaml, field) in cases {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).expect("write");
        let out = PluginCommand::new().config(&path).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{yaml}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(field), "{field} not named: {stderr}");
    }
    let out = PluginCommand::new()
        .config("/nonexistent/plugin.yaml")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_then_exits_zero() {
    let server = RedisServer::start(Flavor::Redis);
    let port = common::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = plugin::loopback_yaml(port, "drain_timeout: 10s, health_interval: 100ms", "info")
        + &format!(
            "backend:\n  address: \"{addr}\"\n  username: cache\n  key_prefix: \"{prefix}\"\n  operation_timeout: 5s\n",
            addr = server.address(),
            prefix = test_prefix("drain"),
        );
    let path = plugin::write_config(dir.path(), &config);
    let addr = format!("127.0.0.1:{port}");
    let mut child = PluginCommand::new()
        .config(&path)
        .env("REDIS_PASSWORD", &server.cache_password)
        .start_serving(&addr, &[]);
    let mut client = Cache::connect(&addr).await;
    client.set("k", b"v").await.expect("set");

    // Freeze Redis so a call is in flight when SIGTERM arrives.
    server.signal("STOP");
    let mut in_flight = client.clone();
    let call = tokio::spawn(async move { in_flight.get("k").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("CONT");

    let answer = call.await.expect("join").expect("in-flight call finished");
    assert!(answer.found);
    let status = tokio::task::spawn_blocking(move || child.wait_exit(Duration::from_secs(30)))
        .await
        .expect("join")
        .expect("exited after SIGTERM");
    assert_eq!(status.code(), Some(0));
}
